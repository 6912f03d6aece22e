-- id: credential_shared_by_workloads
-- title: Credential presented by more than one workload
-- severity: high
-- owasp_nhi: NHI9
-- description: >
--   One machine credential (an API key, basic or gateway credentials, a secret in a URL, a
--   client-credentials token) is presented by several workloads (OWASP NHI9, reuse): a leak in
--   any of them exposes all, rotating it breaks all, and the logs of the API it opens cannot
--   tell the callers apart. Each workload should hold its own credential.
WITH machine AS (
  -- Only machine credentials: a user's token relayed from service to service, or sent by a
  -- browser to several APIs, is presented by many workloads by design.
  SELECT DISTINCT credential_fp FROM spans
  WHERE credential_fp IS NOT NULL
    AND (credential_kind IN ('api_key', 'basic', 'gateway_id', 'url_secret')
         OR (credential_kind = 'jwt' AND token_sub IS NOT NULL AND token_sub = token_client_id))),
presented AS (
  SELECT e.* FROM edges e
  JOIN machine m ON m.credential_fp = e.dst_id
  WHERE e.relation = 'presented' AND e.src_kind = 'workload'),
shared AS (
  -- Found with distinct pairs first: workload lists for every machine credential outgrew 1 GiB
  -- at 11M spans, and only the shared ones need them.
  SELECT dst_id FROM (SELECT DISTINCT dst_id, src_id FROM presented)
  GROUP BY dst_id HAVING count(*) > 1)
SELECT max(e.last_seen) AS time,
       'credential' AS subject_kind,
       e.dst_id AS subject_id,
       concat('presented by ', count(DISTINCT e.src_id), ' workloads: ',
              array_to_string(array_sort(array_agg(DISTINCT e.src_id)), ', ')) AS detail,
       first_value(e.sample_trace_id ORDER BY e.last_seen DESC) AS trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM presented e
WHERE e.dst_id IN (SELECT dst_id FROM shared)
GROUP BY e.dst_id
