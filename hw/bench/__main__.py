"""``python -m hw.bench`` (and ``--load``): see hw/bench/__init__.py."""

from hw.bench import main

raise SystemExit(main())
