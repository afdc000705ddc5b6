"""``python -m hw.ctl``: the stable command name; the code is hw/tools/ctl.py."""

from hw.tools.ctl import main

if __name__ == "__main__":
    raise SystemExit(main())
