"""Tools for people: the service CLI (``python -m hw.ctl``), board calibration
(``python -m hw.calibrate``) and the demo (``python -m hw.demo``)."""
