"""``python -m hw.demo``: the stable command name; the code is hw/tools/demo.py."""

from hw.tools.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
