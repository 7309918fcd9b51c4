"""What a person reads: the terminal table, the paper-layout Markdown table, each user's decision,
and the sweep plots; all rendered from results.json, none of it runs anything."""
