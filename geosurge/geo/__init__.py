"""Geography: great-circle distances, geo-localization metrics and the H3 geocell hierarchy."""
