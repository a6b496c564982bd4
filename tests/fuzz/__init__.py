"""A fuzzer of the wire: hostile AMQP messages published into a live worker.

``tests/integration/test_fuzz_worker.py`` runs a bounded number of batches in the
suite; ``python -m tests.fuzz --messages 100000`` runs a long campaign and prints a
summary. After each batch the worker must still be the same process, answer a normal
call within 2 s, have drained its queues, and have kept its memory within bounds.
"""
