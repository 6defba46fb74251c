//! fake-lakebase (under construction).
