"""``python -m hw``: the hardware daemon (see hw/service/daemon.py)."""

from hw.service.daemon import main

raise SystemExit(main())
