"""The real-time core: the control loop and what runs it, in a process of its own.

Read in this order:

- ``loop``: ``ControlLoop``, its state and its tick: drain commands, check the inputs, sample,
  run every check (hw.safety.monitor, in order; the first report trips), regulate, actuate;
- ``state``: the output states, ``CommandRefused`` and the published ``Snapshot``;
- ``commands``: what other threads may ask (validated on their thread, applied on the loop's);
- ``regulator``: waveform x ramped amplitude -> calibrated, dithered DAC code, and the command
  history the checks judge the next sample against;
- ``contact`` (lift-off, probes, re-contact, the lifted timeout) and ``balance`` (the charge a
  lift-off left, returned before treatment goes on);
- ``postport``: the narrow port the self-test (hw.safety.selftest) drives the board through;
- ``status``: the snapshot built every few ticks;
- ``runner``: the 2 kHz (or idle) pacing thread; ``rt``: the real-time process's entry point;
- ``channel``: the fixed-size binary messages between the service and the real-time process;
- ``waveform``, ``levels``, ``tickhist``: the waveform, the level table and the timing histograms.

``commands``, ``regulator``, ``contact``, ``balance`` and ``status`` are mixins of ``ControlLoop``
(its methods, grouped by what they do; the state is the loop's). Importing this package does no
I/O.
"""
