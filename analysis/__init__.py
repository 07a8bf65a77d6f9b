"""pagesim.analysis: tables and plots from replay outputs."""
