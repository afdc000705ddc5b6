"""The real-time core: the control loop and what runs it, in a process of its own.

- ``loop``: ``ControlLoop``, one tick = drain commands, sample, check, regulate, actuate;
- ``runner``: the 2 kHz (or idle) pacing thread; ``rt``: the real-time process's entry point;
- ``channel``: the fixed-size binary messages between the service and the real-time process;
- ``waveform``, ``levels``, ``tickhist``: the waveform, the level table and the timing histograms.
"""
