-- id: human_uses_nhi_credential
-- title: A human acting with a non-human credential
-- severity: high
-- owasp_nhi: NHI10
-- description: >
--   A request made on behalf of a user carried a machine's credential: an API key, a gateway
--   key, a secret in a URL, or a client-credentials token (subject = client). The person's
--   actions are then logged as the machine's and escape user-level controls (OWASP NHI10).
SELECT max(start_time) AS time,
       'credential' AS subject_kind,
       credential_fp AS subject_id,
       concat(user_id, ' used a non-human ', min(credential_kind), ' credential in ',
              count(*), ' span(s)') AS detail,
       first_value(trace_id ORDER BY start_time DESC, span_id) AS trace_id,
       first_value(span_id ORDER BY start_time DESC, span_id) AS span_id
FROM spans
WHERE user_id IS NOT NULL
  AND credential_fp IS NOT NULL
  AND (credential_kind IN ('api_key', 'gateway_id', 'url_secret')
       OR (credential_kind = 'jwt' AND token_sub IS NOT NULL AND token_sub = token_client_id))
GROUP BY credential_fp, user_id
