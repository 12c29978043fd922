"""The contract the gateway and the classifier both import.

Message schemas, broker topology, job states, settings helpers and the error
hierarchy live here once, so the two services cannot drift apart.  Nothing in
this package imports torch: the gateway image does not ship it.
"""
