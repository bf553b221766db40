"""dslc.check."""
