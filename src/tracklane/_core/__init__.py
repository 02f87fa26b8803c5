"""The decisions of delivery, without I/O: no threads, sockets, sleeps or wall clock.

``batching`` says when a batch is due and cuts it by exact size; ``retry`` says what one
answer means (deliver, retry after N seconds, split, drop with a reason); ``delivery``
walks one batch through those decisions as a state machine that a driver feeds with
answers and the time; ``ledger`` keeps the counters whose identity
``tracked == delivered + pending + dropped`` every snapshot satisfies; ``intake`` decides
what a closed or full queue does with a message, ``settling`` how a batch's end, a shutdown
and a flush are counted, and ``counters`` holds the counting both pipelines share. Time and
randomness are always passed in, so the thread worker, the asyncio worker and the tests
make the same decisions.
"""
