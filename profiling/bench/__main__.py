from profiling.bench import main

main()
