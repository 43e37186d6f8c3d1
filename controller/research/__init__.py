"""Research loops: Level 1 (propose -> sandbox -> keep or discard) and its parts."""
