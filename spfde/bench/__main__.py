"""`python -m spfde.bench NAME`: the benchmarks (see `spfde.bench.benchmarks`)."""

from spfde.bench.benchmarks import main

main()
