"""The ``av`` command line. It only wires packages together; no package imports it."""
