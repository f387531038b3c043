"""Pure domain rules: no I/O, no event loop, no framework imports."""
