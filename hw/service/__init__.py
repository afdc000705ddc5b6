"""The service process: the socket server, protocol, treatment engine and history recorder.

It holds no pins and no bus; it talks to the real-time process (hw.control.rt) through
``rtlink`` over the channel in ``hw.control.channel``.
"""
