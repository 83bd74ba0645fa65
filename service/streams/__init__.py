"""Streams: chunks of one long sequence, the recurrent state kept between them in a state store."""
