"""What each command does (embed, tag, search, train, report): no terminal, no flags."""
