"""The .nn grammar, shipped inside the package as dslc.grammar."""
