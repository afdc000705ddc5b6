"""``python -m hw``: the hardware daemon (see hw/service/main.py)."""

from hw.service.main import main

raise SystemExit(main())
