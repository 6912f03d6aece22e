-- id: credential_shared_by_workloads
-- title: Credential presented by more than one workload
-- severity: high
-- owasp_nhi: NHI9
-- description: >
--   One credential is presented by several workloads (OWASP NHI9, reuse): a leak in any of them
--   exposes all, rotating it breaks all, and the logs of the API it opens cannot tell the
--   callers apart. Each workload should hold its own credential.
SELECT max(last_seen) AS time,
       'credential' AS subject_kind,
       dst_id AS subject_id,
       concat('presented by ', count(DISTINCT src_id), ' workloads: ',
              array_to_string(array_sort(array_agg(DISTINCT src_id)), ', ')) AS detail,
       first_value(sample_trace_id ORDER BY last_seen DESC) AS trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM edges
WHERE relation = 'presented' AND src_kind = 'workload'
GROUP BY dst_id
HAVING count(DISTINCT src_id) > 1
