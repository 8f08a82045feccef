"""One handler per topic, and the pipeline that runs them."""
