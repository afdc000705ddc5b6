"""``python -m hw.calibrate``: the stable command name; the code is hw/tools/calibrate.py."""

from hw.tools.calibrate import main

if __name__ == "__main__":
    raise SystemExit(main())
