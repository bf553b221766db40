"""dslc.catalogue."""
