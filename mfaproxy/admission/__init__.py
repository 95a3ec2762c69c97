"""Admission control: what keeps mfaproxy answering under overload.

Every request carries a `Ticket` (its arrival time, its deadline, whether it answers a
challenge, where it came from). Every place a request can wait is bounded and fair:
`FairQueue` serves answers to challenges first, then the sources in turn (a flood from
one NAS cannot starve another) and, when full, sheds from the longest queue;
`BoundedPool` runs blocking calls on a fixed number of threads with such a queue in
front, so no executor holds an unbounded backlog. A first-round request that has waited
past its deadline is shed (`errors.Shed`) before any work is done for it.
"""
