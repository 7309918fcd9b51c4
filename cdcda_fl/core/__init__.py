"""The foundation every layer may import: the run config (its key table, reading, coercion and
validation), the one list of methods, atomic writes, progress lines and quiet third-party output."""
