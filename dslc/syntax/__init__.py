"""dslc.syntax."""
