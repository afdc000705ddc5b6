"""``python -m kiosk``: the touch UI over the hw daemon's socket.

  python -m kiosk [--socket PATH] [--config SITE.yaml] [--windowed] [--sim-panel]

On the Pi (systemd unit) it runs full screen on KMS/DRM with the rotation from ``ui.rotation``;
on a desktop ``--windowed`` opens an 800x480 window (480x800 when rotated) and ``--sim-panel``
adds the simulation panel beside it (scripts/run-sim).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m kiosk", description="microcurrent kiosk UI")
    ap.add_argument("--socket", default=os.environ.get("MCK_SOCKET", "/run/microcurrent/hw.sock"))
    ap.add_argument("--config", help="site YAML merged over the defaults (or MCK_CONFIG)")
    ap.add_argument("--windowed", action="store_true", help="a desktop window, not full screen")
    ap.add_argument("--sim-panel", action="store_true", help="show the simulation panel")
    ap.add_argument(
        "--pin",
        default=os.environ.get("MCK_SERVICE_PIN", "0000"),
        help="service-area PIN (or MCK_SERVICE_PIN)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from hw.config import ConfigError, load_config

    try:
        ui = load_config(args.config).ui
    except ConfigError as e:
        for p in e.problems:
            print(f"CONFIG {p}", file=sys.stderr)
        print("kiosk: configuration invalid (see above); the UI does not start", file=sys.stderr)
        return 2
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our own arguments, not Kivy's
    from kivy.config import Config

    fullscreen = ui.fullscreen and not args.windowed
    portrait = ui.rotation in (90, 270)
    w, h = (480, 800) if portrait else (800, 480)
    Config.set("kivy", "exit_on_escape", "0")
    Config.set("graphics", "rotation", "0")
    if fullscreen:
        Config.set("graphics", "fullscreen", "auto")
        Config.set("graphics", "show_cursor", "0")
        # One input provider per device: SDL2 reads the touch screen itself on KMS/DRM; the
        # default mouse/probesysfs providers would deliver every touch a second time.
        for opt in Config.options("input"):
            Config.remove_option("input", opt)
    else:
        from kiosk.display import configure_window

        configure_window(w + (300 if args.sim_panel else 0), h)
        Config.set("graphics", "resizable", "1")
    from kivy.core.window import Window

    if fullscreen and ui.rotation:
        Window.rotation = ui.rotation
    from kiosk.app import KioskApp
    from kiosk.backlight import Backlight
    from kiosk.link import connect_view_model
    from kiosk.viewmodel import ViewModel

    vm = ViewModel(None, service_pin=args.pin, backlight=Backlight.find())
    vm.blank_after_s = ui.blank_after_s
    link = connect_view_model(vm, args.socket)
    app = KioskApp(vm, link=link, socket_path=args.socket, sim_panel=args.sim_panel)
    import signal

    # SIGTERM (systemd, run-sim) and SIGINT end the app through on_stop, like closing the window.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: app.stop())
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
