"""The service process: the socket server, protocol, treatment engine and history recorder.

It holds no pins and no bus; it talks to the real-time process (hw.control.rt) through
``rtlink`` over the channel in ``hw.control.channel``. Read from the top:

- ``main``: ``python -m hw`` (config, socket lock, the real-time process, signals, exit codes);
- ``daemon``: the Daemon that wires the rest together, its supervised tasks, start and shutdown;
- ``connection`` (one client connection, the connection limits), ``scheduler`` (fair service:
  which request runs next), ``protocol`` (parsing and validation, error codes), ``commands`` and
  ``history_commands`` (what each request does);
- ``engine`` (the treatment state machine) with ``states``, ``starting`` (the fail-closed start),
  ``treatment`` (dose per zone, summary), ``records`` (record writes and their deadlines) and
  ``engine_status``;
- ``recorder`` (the history thread and the engine's recorder over it), ``tasks`` (supervision),
  ``socketlock``, ``notify`` (sd_notify), ``rtlink`` and ``rtstandins`` (the real-time process as
  the engine sees it), ``client`` (the synchronous client library).
"""
