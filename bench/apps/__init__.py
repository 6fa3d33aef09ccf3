"""One small ASGI app per system, all with the same endpoints and the same event content.

``/burst?n=&size=``   n events of ``size`` bytes of data, as fast as the system goes.
``/burst_fields?n=&size=``  n events with ``id`` (the sequence number from 0), ``event: tick`` and JSON data
                      (:func:`common.tick`, a ``text`` of ``size`` bytes), each system in its own idiom.
``/burst_dict?n=&size=``    the same events, each yielded as a dict of its fields where the system takes one.
``/latency?n=&every=&size=``  one event every ``every`` seconds carrying the send time.
``/idle?size=``       one event, then nothing until the client leaves.
``/ticks?every=&size=``  one event at once, then one every ``every`` seconds (1 by default), forever.
``/fanout``           every tick of the in-process broadcaster (``BENCH_TICK`` s, ``BENCH_SIZE`` B).

Every data line is ``size`` bytes (100 by default), but for the realistic bursts, whose JSON carries a
``text`` of ``size`` bytes; timed payloads start ``"<time.time()> <seq> "``.
"""
