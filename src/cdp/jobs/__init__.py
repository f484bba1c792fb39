"""Entry points: one module per ``cdp`` command, each with ``run(spark, ctx, ...)`` and ``main(argv)``."""
