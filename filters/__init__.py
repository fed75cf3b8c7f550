"""Pure topology logic: which endpoints a node should see. No I/O, no asyncio."""
