"""``python -m hw``: the hardware daemon (see hw/daemon.py)."""

from hw.daemon import main

raise SystemExit(main())
