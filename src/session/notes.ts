/** Free-form notes plugins leave for each other, per connection or per transaction (qpsmtpd's notes). */
export type Notes = Record<string, unknown>;
