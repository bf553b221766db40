"""The primitive op families; importing this package registers every op."""
