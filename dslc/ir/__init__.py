"""The intermediate representation: graph, op registry, text form, verifier."""
