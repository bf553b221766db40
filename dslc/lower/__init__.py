"""dslc.lower."""
