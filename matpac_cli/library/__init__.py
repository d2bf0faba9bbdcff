"""The library: a content-keyed store of what the encoder computed, that every command reads.

A file is known by its audio, not its name (`key`): re-tagging, renaming, moving, `touch`,
`chmod` or a copy on another disk find what was stored, an edit of the audio does not. What is
stored per (audio key, model, front-end settings) is in `store`; where the library lives in
`location`. The engine is Lance (pylance): appends as fragments, deletions, versions, Arrow in
and out, and concurrent writers with atomic commits (two matpac runs on one library both finish).
"""
