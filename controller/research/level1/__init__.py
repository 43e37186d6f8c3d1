"""Level 1, the inner loop: propose -> validate -> sandbox -> keep or discard, and its parts."""
