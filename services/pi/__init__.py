"""Monte-Carlo estimation of pi as a mesh of services, after the classic ZeroMQ example.

    bitsource --events "0.0"--------> always_yes --cast "Y"----------> tally
              --events "0.1", "1.*"-> judge --rpc--> pythagoras
                                            --cast "Y" or "N"--------> tally

The bit source publishes random bit strings as events whose type is their first two
bits, so subscribers split the stream with filters as ZeroMQ's SUB prefixes do. A
point whose coordinates both start with a 0 bit lies in the lower-left quadrant,
inside the circle: ``always_yes`` says yes without looking. ``judge`` asks
``pythagoras`` for the sum of squares of the others. Every verdict reaches
``tally`` through a cast pipeline, and ``tally.estimate()`` reports pi. Run it all
with ``python -m services.pi``.
"""

#: Bits of each coordinate; two squares stay below 2**61, within JSON's 64-bit ints.
BITS = 30
#: The squared radius: a point is inside when x*x + y*y < UNIT.
UNIT = 2 ** (BITS * 2)
