"""Every code block of README.md and docs/ that a user would paste (```sh, ```python,
```json) is run or checked by this package's tests, as written: shell and Python
against a real `kd serve` on the embedded default, in a folder holding the
repository's examples and `.venv`; JSON specs parsed by kdcore's schema. The only
changes are the port (the service runs on a free one: `127.0.0.1:8000` in a block
becomes it, KD_URL says it to `kd`) and the placeholders a block asks the reader to
fill in (a job id, an artifact id, a file id). A block that cannot run on these
machines is listed in NOT_RUN with the reason and the test that covers it instead. A
new block fails `test_blocks.py::test_every_pasteable_block_is_covered` until it is run
here or listed.

Each test that runs blocks has a module, a sandbox and a `kd serve` of its own, so
that `make test` spreads them over its workers."""
