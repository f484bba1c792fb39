"""What the jobs share: config files and job context, the Spark session, the lake lock, quality gates."""
