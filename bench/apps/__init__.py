"""One small ASGI app per system, all with the same endpoints and the same event content.

``/burst?n=&size=``   n events of ``size`` bytes of data, as fast as the system goes.
``/latency?n=&every=&size=``  one event every ``every`` seconds carrying the send time.
``/idle?size=``       one event, then nothing until the client leaves.
``/ticks?every=&size=``  one event at once, then one every ``every`` seconds (1 by default), forever.
``/fanout``           every tick of the in-process broadcaster (``BENCH_TICK`` s, ``BENCH_SIZE`` B).

Every data line is ``size`` bytes (100 by default); timed payloads start ``"<time.time()> <seq> "``.
"""
