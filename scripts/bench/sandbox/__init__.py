"""The parts of scripts/bench_sandbox.py, one module each; that script's docstring says what
each part measures and its main() runs them.

context holds what the parts share (the run's Bench, the row names the goals read, the spare
wait); create_ready is part A with virt_clone its comparison, at_once part B, capture_diff
part C with virt_diff its comparison; image_build the optional --build row; goals the issue 6
goals table; cleanup removes all a run made.
"""
