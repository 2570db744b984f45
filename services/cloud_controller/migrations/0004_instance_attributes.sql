-- EC2-Classic instance attributes users change with ModifyInstanceAttribute, and product codes on images
-- (ModifyImageAttribute ProductCodes; instances show their image's codes; ConfirmProductInstance).

ALTER TABLE instances ADD COLUMN disable_api_termination INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN shutdown_behavior TEXT NOT NULL DEFAULT 'terminate';  -- stop | terminate

CREATE TABLE image_product_codes (
    image_id TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    PRIMARY KEY (image_id, code)
);
CREATE INDEX image_product_codes_code ON image_product_codes(code);
