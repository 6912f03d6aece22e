-- id: staging_credential_in_production
-- title: Non-production credential used in production
-- severity: high
-- owasp_nhi: NHI8
-- description: >
--   A credential used by a production service was issued by a staging, development or test
--   identity provider, or was also used in a non-production environment. Environments that share
--   credentials are not isolated (OWASP NHI8): a compromise of the weaker one reaches the other.
--   A span's environment is its resource's deployment.environment.name (or
--   deployment.environment), else its Kubernetes cluster name.
WITH placed AS (
  SELECT credential_fp, trace_id, span_id, start_time, service_name,
         lower(coalesce(token_iss, '')) AS issuer,
         lower(coalesce(resource_attributes['deployment.environment.name'],
                        resource_attributes['deployment.environment'],
                        k8s_cluster, '')) AS environment
  FROM spans WHERE credential_fp IS NOT NULL),
classified AS (
  -- Classified span by span (0.8 s over 10M spans), not through a list of distinct
  -- environments: such a list is read from every span, whereas here a report's filter on
  -- credential_fp reaches the scan of spans and its bloom filters.
  -- A name saying non-production wins over one that also says production: non-prod,
  -- pre-prod and prod-perf-test are not production.
  SELECT *,
         regexp_like(environment, '(^|[^a-z])(prod|production|prd|live)([^a-z]|$)')
           AND NOT in_non_production AS in_production
  FROM (SELECT *,
               regexp_like(environment,
                 '(^|[^a-z])(non-?prod|pre-?prod|staging|stage|stg|dev|development|test|testing|qa|uat|sandbox|perf)([^a-z]|$)')
                 AS in_non_production,
               regexp_like(issuer,
                 '(^|[^a-z])(non-?prod|pre-?prod|staging|stage|stg|dev|development|test|testing|qa|uat|sandbox)([^a-z]|$)')
                 AS non_production_issuer
        FROM placed)),
relevant AS (
  -- Only spans that can matter: in production, or with a sign of non-production.
  SELECT * FROM classified WHERE in_production OR in_non_production OR non_production_issuer),
flagged AS (
  -- The credentials to report, found with a few booleans per credential; only theirs then
  -- build the detail (service and environment lists per credential for every credential
  -- outgrew 1 GiB at 11M spans).
  SELECT credential_fp FROM relevant
  GROUP BY credential_fp
  HAVING bool_or(in_production) AND (bool_or(non_production_issuer) OR bool_or(in_non_production)))
SELECT max(start_time) FILTER (WHERE in_production) AS time,
       'credential' AS subject_kind,
       credential_fp AS subject_id,
       concat('used in production by ',
              array_to_string(array_sort(array_agg(DISTINCT service_name) FILTER (WHERE in_production)), ', '),
              CASE WHEN bool_or(non_production_issuer)
                   THEN concat('; issued by ', first_value(issuer) FILTER (WHERE non_production_issuer)) ELSE '' END,
              CASE WHEN bool_or(in_non_production)
                   THEN concat('; also used in ', array_to_string(array_sort(array_agg(DISTINCT environment) FILTER (WHERE in_non_production)), ', '))
                   ELSE '' END) AS detail,
       first_value(trace_id ORDER BY in_production DESC, start_time DESC) AS trace_id,
       first_value(span_id ORDER BY in_production DESC, start_time DESC) AS span_id
FROM relevant
WHERE credential_fp IN (SELECT credential_fp FROM flagged)
GROUP BY credential_fp
