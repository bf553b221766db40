"""dslc.runtime."""
