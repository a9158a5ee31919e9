-- The night's B12-relevant MAR administrations from an Epic Clarity-style reporting database, one row
-- per MAR line, in the columns of the `clarity` source mapping (schemas/sources/clarity.yaml).
--
-- Parameters (bound by `b12pipeline pull`): :start, :end = the night's window in the site's local
-- wall-clock time (the night's date plus the source's lookback_days for late charting), end exclusive.
-- This file is SQL Server's (Clarity's database; 2017+ for STRING_AGG ... WITHIN GROUP);
-- clarity.postgresql.sql is the same query for PostgreSQL, chosen automatically for a postgresql URL.
-- Every ORDER BY matters: identical rows must give identical bytes, so that a second pull of an
-- unchanged night does nothing (diagnoses keep their order on the order, E/M codes their charge order).
--
-- Tables and the columns read (check them against your Clarity build before going live):
--   MAR_ADMIN_INFO      ORDER_MED_ID, LINE, MAR_ENC_CSN, TAKEN_TIME, MAR_ACTION_C, SIG, DOSE_UNIT_C,
--                       ROUTE_C, SITE_C, USER_ID
--   MAR_ADDL_INFO       ORDER_MED_ID, LINE, NDC_CODE (scanned), LOT_NUM, EXP_DATE, WASTE_MCG
--   ORDER_MED           ORDER_MED_ID, PAT_ID, MEDICATION_ID, AUTHRZING_PROV_ID
--   PATIENT             PAT_ID, PAT_MRN_ID
--   CLARITY_MEDICATION  MEDICATION_ID, NAME, and the pharmacy product master's CONC_MCG_PER_ML,
--                       CONTAINER_TYPE, CONTAINER_VOL_ML (site columns: absent ones may be NULL)
--   RXNORM_CODES        MEDICATION_ID, LINE, RXNORM_CODE (first line)
--   CLARITY_SER_2       PROV_ID, NPI
--   ORDER_DX_MED        ORDER_MED_ID, LINE, DX_ID;  EDG_CURRENT_ICD10: DX_ID, CODE
--   PAT_ENC             PAT_ENC_CSN_ID, POS_CODE (department's CMS place of service),
--                       BILLING_SYSTEM (HB/PB), FIN_CLASS_C (primary coverage's financial class)
--   HSP_TRANSACTIONS    TX_ID, ORDER_ID, PAT_ENC_CSN_ID, SERVICE_DATE, HCPCS_CODE, CPT_CODE, QUANTITY,
--                       MODIFIERS — the drug line (HCPCS J-code), the administration line (CPT 963xx)
--                       and same-day E/M lines (CPT 992xx)
--   HSP_TX_NDC_CODES    TX_ID, NDC_CODE_ADMIN_AMT, NDC_CODE_UNIT_C
-- A charge line is linked to the administration by order and date of service. Where one order has two
-- administrations on one day, the site's charge-trigger link (MAR line on the transaction) must be
-- added to the two charge joins below, or both administrations see the same charge line.
SELECT
    mai.ORDER_MED_ID,
    mai.LINE,
    pat.PAT_MRN_ID,
    mai.MAR_ENC_CSN,
    mai.TAKEN_TIME,
    mai.MAR_ACTION_C,
    med.NAME AS MED_NAME,
    rx.RXNORM_CODE,
    addl.NDC_CODE,
    mai.SIG,
    mai.DOSE_UNIT_C,
    med.CONC_MCG_PER_ML,
    med.CONTAINER_TYPE,
    med.CONTAINER_VOL_ML,
    mai.ROUTE_C,
    mai.SITE_C,
    addl.LOT_NUM,
    addl.EXP_DATE,
    addl.WASTE_MCG,
    mai.USER_ID,
    ser.NPI AS ORD_PROV_NPI,
    dx.DX_ICD10_LIST,
    enc.POS_CODE,
    enc.BILLING_SYSTEM,
    enc.FIN_CLASS_C,
    drug.HCPCS_CODE,
    drug.QUANTITY,
    drug.MODIFIERS,
    ndc.NDC_CODE_ADMIN_AMT,
    ndc.NDC_CODE_UNIT_C,
    adm.CPT_CODE AS ADMIN_CPT_CODE,
    em.SAME_DAY_EM
FROM MAR_ADMIN_INFO mai
JOIN ORDER_MED om ON om.ORDER_MED_ID = mai.ORDER_MED_ID
LEFT JOIN PATIENT pat ON pat.PAT_ID = om.PAT_ID
LEFT JOIN CLARITY_MEDICATION med ON med.MEDICATION_ID = om.MEDICATION_ID
LEFT JOIN RXNORM_CODES rx ON rx.MEDICATION_ID = om.MEDICATION_ID AND rx.LINE = 1
LEFT JOIN MAR_ADDL_INFO addl ON addl.ORDER_MED_ID = mai.ORDER_MED_ID AND addl.LINE = mai.LINE
LEFT JOIN CLARITY_SER_2 ser ON ser.PROV_ID = om.AUTHRZING_PROV_ID
LEFT JOIN PAT_ENC enc ON enc.PAT_ENC_CSN_ID = mai.MAR_ENC_CSN
LEFT JOIN (
    SELECT odm.ORDER_MED_ID, STRING_AGG(edg.CODE, ';') WITHIN GROUP (ORDER BY odm.LINE) AS DX_ICD10_LIST
    FROM ORDER_DX_MED odm
    JOIN EDG_CURRENT_ICD10 edg ON edg.DX_ID = odm.DX_ID
    GROUP BY odm.ORDER_MED_ID
) dx ON dx.ORDER_MED_ID = mai.ORDER_MED_ID
LEFT JOIN HSP_TRANSACTIONS drug
    ON drug.ORDER_ID = mai.ORDER_MED_ID
    AND drug.SERVICE_DATE = CAST(mai.TAKEN_TIME AS DATE)
    AND drug.HCPCS_CODE IS NOT NULL
LEFT JOIN HSP_TX_NDC_CODES ndc ON ndc.TX_ID = drug.TX_ID
LEFT JOIN HSP_TRANSACTIONS adm
    ON adm.ORDER_ID = mai.ORDER_MED_ID
    AND adm.SERVICE_DATE = CAST(mai.TAKEN_TIME AS DATE)
    AND adm.CPT_CODE LIKE '963%'
LEFT JOIN (
    SELECT t.PAT_ENC_CSN_ID, t.SERVICE_DATE,
           STRING_AGG(CASE WHEN t.MODIFIERS IS NULL THEN t.CPT_CODE
                           ELSE CONCAT(t.CPT_CODE, '-', t.MODIFIERS) END, ';')
               WITHIN GROUP (ORDER BY t.TX_ID) AS SAME_DAY_EM
    FROM HSP_TRANSACTIONS t
    WHERE t.CPT_CODE LIKE '992%'
    GROUP BY t.PAT_ENC_CSN_ID, t.SERVICE_DATE
) em ON em.PAT_ENC_CSN_ID = mai.MAR_ENC_CSN AND em.SERVICE_DATE = CAST(mai.TAKEN_TIME AS DATE)
WHERE mai.TAKEN_TIME >= :start
  AND mai.TAKEN_TIME < :end
ORDER BY mai.ORDER_MED_ID, mai.LINE
